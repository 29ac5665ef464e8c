# the Python-backend stub is an isolated interpreter: `portrait serve` passes the project's import paths
__import__("sys").path[:0] = filter(None, __import__("os").environ.get("PORTRAIT_PYTHONPATH", "").split(":"))

import time

import numpy as np

from portrait.errors import Unavailable
from portrait.models.checkpoint import read_sdxl_info
from portrait.models.unet_runner import load_predictor, warm_up
from portrait.serving import metrics, triton_io
from portrait.serving.cancel import cancel_requested, clear
from portrait.serving.courier import Courier
from portrait.serving.denoise_job import ARRAYS, SCALARS, check_job_id, denoise_loop
from portrait.serving.step_scheduler import Job, StepScheduler
from portrait.serving.torch_setup import torch_setup
from portrait.settings import get_settings

pb = triton_io.pb_utils
FINAL = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    """The step scheduler owning the UNet: each request's loop joins at a step boundary (portrait/serving/step_scheduler.py).

    Every torch op of this process runs on the scheduler's thread (loading, warm-up, each request's tensors, the
    forwards): this thread, the stub's, only decodes numpy arrays and hands them over with the callbacks. Every round
    trip to the server about a request (its responses, its `is_cancelled`) runs on the courier's thread
    (portrait/serving/courier.py), so the scheduler's thread never waits on the server between forwards."""

    def initialize(self, args):
        triton_io.setup(args)
        self.settings = get_settings()
        self.courier = Courier(poll_interval=0.1)  # cancel checks: 10 a second per request in flight
        self.info = read_sdxl_info(self.settings.sdxl_dir)
        try:
            observer = metrics.SchedulerMetrics(args["model_name"]).update
        except Exception:  # metrics never stop the model
            triton_io.log.warning("scheduler metrics disabled", exc_info=True)
            observer = None
        self.scheduler = StepScheduler(None, self.settings.max_rows, self.settings.max_active, observer,
                                       policy=self.settings.admission, loader=self.load).start()
        self.dims = self.scheduler.predict.dims

    def load(self):
        """On the scheduler's thread: the only copy of the UNet on this device (PhotoMaker LoRA fused), warmed up."""
        torch_setup(heavy=True)  # this process runs the UNet: it gets the cores
        predict = load_predictor(self.settings)
        warm_up(predict, predict.dims)
        return predict

    def execute(self, requests):
        for request in requests:  # decoupled: responses stream from the scheduler's thread
            self.submit(request, triton_io.Tracked())
        return None

    def submit(self, request, tracked):
        sender = request.get_response_sender()
        key, job_id, courier = object(), None, self.courier

        def progress(step, num_steps):
            response = [triton_io.tensor("step", np.array([step], np.int32)),
                        triton_io.tensor("num_steps", np.array([num_steps], np.int32))]
            courier.post_progress(key, lambda: sender.send(pb.InferenceResponse(response)))

        def done(latents):
            clear(job_id)
            array = latents.numpy()  # on the scheduler's thread: no torch on the courier's

            def send():
                sender.send(pb.InferenceResponse([triton_io.tensor("latents", array)]), flags=FINAL)
                tracked.succeeded()
            courier.finish(key, send)

        def fail(error):  # this request ends with its error; the others go on
            clear(job_id)
            courier.finish(key, lambda: sender.send(tracked.failed(error), flags=FINAL))

        try:
            triton_io.refuse_if_draining(request)
            scalars = {k: triton_io.get_scalar(request, k) for k in SCALARS}
            job_id = check_job_id(scalars["job_id"])
            wants_progress = scalars["progress"] is None or bool(scalars["progress"])
            # copies: the loop is built later, on the scheduler's thread, and must not hold the request's buffers
            arrays = {k: None if (a := triton_io.get_array(request, k)) is None else np.array(a) for k in ARRAYS}
        except Exception as error:
            fail(error)
            return
        # the sender answers for its request: no closure here holds the request object, which must be released on
        # the stub's thread (released on another it freed its tensors twice: docs/reliability.md)
        courier.watch(key, sender.is_cancelled)  # the job's flag file is read by the loop itself, below
        deadline = self.settings.request_deadline
        self.scheduler.submit(Job(lambda: denoise_loop(arrays, scalars, self.info, self.dims),
                                  progress if wants_progress else lambda step, num_steps: None, done, fail,
                                  # the flag file is read every step (a stat): a cancelled caller stops the loop at
                                  # the next step, not the courier's next poll
                                  cancelled=lambda: courier.cancelled(key) or cancel_requested(job_id),
                                  deadline=time.monotonic() + deadline if deadline > 0 else None))

    def finalize(self):
        self.scheduler.stop(Unavailable("the denoise model is shutting down; retry"))
        self.courier.stop()  # after the scheduler: its last answers are queued by then
