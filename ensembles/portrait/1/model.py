# the Python-backend stub is an isolated interpreter: `portrait serve` passes the project's import paths
__import__("sys").path[:0] = filter(None, __import__("os").environ.get("PORTRAIT_PYTHONPATH", "").split(":"))

import secrets
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np

from portrait.errors import Cancelled, InvalidInput
from portrait.models.checkpoint import read_sdxl_info
from portrait.params import IDENTITY_INPUT_NAMES, MODELS, FaceIdentities, Stage1Params, detail_params_for, stage1_params_for
from portrait.serving import metrics, triton_io
from portrait.serving.cancel import request_cancel
from portrait.settings import get_settings
from portrait.stages import DetailResult, detail_faces, generate_base, prepare_identities

pb = triton_io.pb_utils
# the request schema (portrait/params.py): stage 1's fields, and stage 2's own (its sampling fields are stage 1's)
STAGE1 = MODELS["portrait"].fields_of(Stage1Params)
STAGE2 = tuple(n for n in MODELS["portrait"].fields if n not in STAGE1)


@dataclass(frozen=True)
class Call:
    """What a worker thread needs of a request, taken on the stub's thread (the request object stays there)."""

    sender: object  # the request's response sender (its is_cancelled answers for the request)
    trace: object
    values: dict
    identity_arrays: list  # IDENTITY_INPUT_NAMES' arrays (copies), None where absent


class TritonPythonModel:
    def initialize(self, args):
        triton_io.setup(args)
        self.info = read_sdxl_info(get_settings().sdxl_dir)
        self.slots = threading.BoundedSemaphore(int(triton_io.model_parameters(args).get("max_concurrent_requests", "8")))
        self.in_flight = 0
        self.lock = threading.Lock()

    def execute(self, requests):
        # each request runs in its own daemon thread (as Triton's decoupled examples): execute returns at once,
        # and a stub shutting down is never held by a worker thread. The worker gets the request's values, its
        # response sender and its trace, never the request object: a request released on a worker thread freed its
        # input tensors' memory there while the stub's own thread did too ("double free or corruption", the stub
        # dead under 12 streams with cancellations; docs/reliability.md)
        for request in requests:
            with self.lock:
                self.in_flight += 1
            tracked, sender = triton_io.Tracked(), request.get_response_sender()
            try:
                triton_io.refuse_if_draining(request)
                call = Call(sender, request.trace(),
                            {k: triton_io.get_scalar(request, k) for k in (*STAGE1, *STAGE2, "detail")},
                            [None if (a := triton_io.get_array(request, n)) is None else np.array(a)
                             for n in IDENTITY_INPUT_NAMES])
            except Exception as error:
                self.answer_error(sender, tracked, error)
                with self.lock:
                    self.in_flight -= 1
                continue
            threading.Thread(target=self.run_in_slot, args=(call, tracked), daemon=True).start()

    @staticmethod
    def answer_error(sender, tracked, error) -> None:
        try:
            sender.send(tracked.failed(error), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception:  # a cancelled request may refuse responses; there is nobody left to tell
            pass

    def finalize(self):
        deadline = time.monotonic() + 10
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.1)

    def run_in_slot(self, call: "Call", tracked: triton_io.Tracked):
        try:
            with self.slots:
                self.run(call, tracked)
        finally:
            with self.lock:
                self.in_flight -= 1

    def run(self, call: "Call", tracked: triton_io.Tracked):
        """Every stream ends with one final response: the result, or the error (counted and logged there)."""
        sender, values = call.sender, dict(call.values)
        job = uuid.uuid4().hex
        backend = triton_io.BlsBackend(job_id=job, trace=call.trace, fence=sender.is_cancelled)

        def reporter(stage: str):
            def report(step: int, total: int) -> None:
                if sender.is_cancelled():
                    request_cancel(job)  # stops the denoise loop this request started
                    raise Cancelled(f"cancelled by the client during {stage}, step {step} of {total}")
                sender.send(pb.InferenceResponse([
                    triton_io.tensor("stage", np.array([stage.encode()], dtype=object)),
                    triton_io.tensor("step", np.array([step], np.int32)), triton_io.tensor("num_steps", np.array([total], np.int32))]))
            return report

        try:
            if values["seed"] is None:
                values["seed"] = secrets.randbelow(2**31)
            size = self.info.default_size
            base_params = Stage1Params.from_mapping({k: values[k] for k in STAGE1}, {"width": size, "height": size})
            stage2 = {"work_size": size, **{k: values[k] for k in STAGE2 if values[k] is not None}}
            detail_params = detail_params_for(base_params, **stage2) if values["detail"] is not False else None
            people = FaceIdentities.from_arrays(*call.identity_arrays)
            identities = []
            if detail_params is None and (people.count or people.face_prompts):
                raise InvalidInput("id_images" if people.count else "face_prompts",
                                   "need stage 2 (detail must be true): identity is injected there")
            if detail_params is not None:  # checked before any diffusion: a bad identity photo fails at once
                people.check_with(detail_params.max_faces, detail_params.assign, detail_params.prompt)
            if people.count:
                metrics.identity_request(triton_io.model_name())
                identities = prepare_identities(backend, people, detail_params.prompt)
                base_params = stage1_params_for(base_params, with_identity=True)  # stage 1: no trigger word
            images, truncated = generate_base(backend, base_params, self.info.force_zeros_for_empty_prompt, reporter("base"))
            base = images[0]
            if detail_params is not None:
                result = detail_faces(backend, base, detail_params, self.info.force_zeros_for_empty_prompt, reporter("detail"),
                                      identities, people.face_prompts)
                metrics.faces_detailed(triton_io.model_name(), len(result.boxes))
                metrics.identity_similarity(triton_io.model_name(), result.assigned_similarity())
            else:
                result = DetailResult(base, np.zeros(base.shape[:2], np.uint8), np.zeros((0, 4), np.float32))
            sender.send(pb.InferenceResponse([
                triton_io.tensor("base_image", base), triton_io.tensor("mask", result.mask),
                triton_io.tensor("image", result.image), triton_io.tensor("boxes", result.boxes),
                triton_io.tensor("seed", np.array([base_params.seed], np.int64)),
                triton_io.tensor("truncated_tokens", np.array([truncated], np.int32)),
                *(triton_io.tensor(k, v) for k, v in result.identity_outputs().items())]),
                flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            tracked.succeeded()
        except Exception as error:
            self.answer_error(sender, tracked, error)
