# the Python-backend stub is an isolated interpreter: `portrait serve` passes the project's import paths
__import__("sys").path[:0] = filter(None, __import__("os").environ.get("PORTRAIT_PYTHONPATH", "").split(":"))

import numpy as np

from portrait.errors import Unavailable
from portrait.models.checkpoint import read_sdxl_info
from portrait.models.unet_runner import load_predictor, warm_up
from portrait.serving import triton_io
from portrait.serving.cancel import cancel_requested, clear
from portrait.serving.denoise_job import ARRAYS, SCALARS, check_job_id, denoise_loop
from portrait.serving.step_scheduler import Job, SchedulerStats, StepScheduler
from portrait.serving.torch_setup import torch_setup

pb = triton_io.pb_utils
FINAL = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class SchedulerMetrics:
    """portrait_scheduler_* on Triton's metrics port, fed after every scheduler change (deltas for counters)."""

    GAUGES = {"active_requests": "Requests denoising now", "waiting_requests": "Requests waiting to join the step scheduler",
              "backlog": "Requests waiting or denoising (the autoscaling signal)"}
    COUNTERS = {"steps_total": "Denoising steps advanced, summed over requests",
                "forwards_total": "UNet forwards run by the step scheduler",
                "unet_rows_total": "UNet rows evaluated (rows per forward = this / forwards_total)"}

    def __init__(self, model: str):
        family = pb.MetricFamily
        labels = {"model": model}
        self.families = {k: family(name=f"portrait_scheduler_{k}", description=d, kind=family.GAUGE) for k, d in self.GAUGES.items()}
        self.families.update({k: family(name=f"portrait_scheduler_{k}", description=d, kind=family.COUNTER)
                              for k, d in self.COUNTERS.items()})
        self.metrics = {k: f.Metric(labels=labels) for k, f in self.families.items()}
        self.counted = {k: 0 for k in self.COUNTERS}

    def update(self, stats: SchedulerStats) -> None:
        for k, v in (("active_requests", stats.active), ("waiting_requests", stats.waiting), ("backlog", stats.backlog)):
            self.metrics[k].set(v)
        now = {"steps_total": stats.steps_total, "forwards_total": stats.forwards_total, "unet_rows_total": stats.rows_total}
        for k, v in now.items():
            if v > self.counted[k]:
                self.metrics[k].increment(v - self.counted[k])
                self.counted[k] = v


class TritonPythonModel:
    """The step scheduler owning the UNet: each request's loop joins at a step boundary (portrait/serving/step_scheduler.py)."""

    def initialize(self, args):
        triton_io.setup(args)
        settings = torch_setup(heavy=True)  # this process runs the UNet: it gets the cores
        self.info = read_sdxl_info(settings.sdxl_dir)
        predict = load_predictor(settings)  # the only copy of the UNet on this device (PhotoMaker LoRA fused)
        self.dims = predict.dims
        warm_up(predict, self.dims)
        try:
            observer = SchedulerMetrics(args["model_name"]).update
        except Exception:  # metrics never stop the model (a backend without custom metrics)
            triton_io.log.warning("scheduler metrics disabled", exc_info=True)
            observer = None
        self.scheduler = StepScheduler(predict, settings.max_rows, settings.max_active, observer).start()

    def execute(self, requests):
        for request in requests:  # decoupled: responses stream from the scheduler's thread
            self.submit(request, triton_io.Tracked())
        return None

    def submit(self, request, tracked):
        sender = request.get_response_sender()
        job_id = None

        def progress(step, num_steps):
            sender.send(pb.InferenceResponse([triton_io.tensor("step", np.array([step], np.int32)),
                                              triton_io.tensor("num_steps", np.array([num_steps], np.int32))]))

        def done(latents):
            clear(job_id)
            sender.send(pb.InferenceResponse([triton_io.tensor("latents", latents.numpy())]), flags=FINAL)
            tracked.succeeded()

        def fail(error):  # this request ends with its error; the others go on
            clear(job_id)
            sender.send(tracked.failed(error), flags=FINAL)

        try:
            triton_io.refuse_if_draining(request)
            scalars = {k: triton_io.get_scalar(request, k) for k in SCALARS}
            job_id = check_job_id(scalars["job_id"])
            steps = denoise_loop({k: triton_io.get_array(request, k) for k in ARRAYS}, scalars, self.info, self.dims)
        except Exception as error:
            fail(error)
            return
        self.scheduler.submit(Job(steps, progress, done, fail,
                                  cancelled=lambda: request.is_cancelled() or cancel_requested(job_id)))

    def finalize(self):
        self.scheduler.stop(Unavailable("the denoise model is shutting down; retry"))
