# the Python-backend stub is an isolated interpreter: `portrait serve` passes the project's import paths
__import__("sys").path[:0] = filter(None, __import__("os").environ.get("PORTRAIT_PYTHONPATH", "").split(":"))

import torch

from portrait.diffusion.loop import UNetCall
from portrait.models.unet_runner import check_unet_inputs, load_predictor, warm_up
from portrait.serving import triton_io
from portrait.serving.step_scheduler import bucket_key, merge_calls
from portrait.serving.torch_setup import torch_setup

INPUTS = ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids")


class TritonPythonModel:
    """One noise prediction per request, for perf_analyzer and direct calls. Served only with PORTRAIT_SERVE_UNET=1:
    `denoise` holds its own UNet, and this model loads a second copy of the weights."""

    def initialize(self, args):
        triton_io.setup(args)
        self.predict = load_predictor(torch_setup(heavy=True))
        warm_up(self.predict, self.predict.dims)

    def decode(self, request) -> UNetCall:
        arrays = [triton_io.get_array(request, name) for name in INPUTS]
        check_unet_inputs(self.predict.dims, *arrays)
        sample, timestep, hidden, text_embeds, time_ids = (torch.from_numpy(a.copy()) for a in arrays)
        return UNetCall(sample, timestep.reshape(-1), hidden, text_embeds, time_ids, 0, 1)

    def execute(self, requests):
        tracked = triton_io.Tracked(len(requests))
        responses, calls = [None] * len(requests), {}
        for i, request in enumerate(requests):
            try:
                triton_io.refuse_if_draining(request)
                calls[i] = self.decode(request)
            except Exception as error:  # a bad request gets its own error; the others go on
                responses[i] = tracked.failed(error)
        groups: dict[tuple, list[int]] = {}  # one forward per latent size (the batcher merges any shapes)
        for i, call in calls.items():
            groups.setdefault(bucket_key(call), []).append(i)
        for members in groups.values():
            try:
                out = self.predict(merge_calls([calls[i] for i in members])).numpy()
            except Exception as error:
                for i in members:
                    responses[i] = tracked.failed(error)
                continue
            start = 0
            for i in members:
                n = calls[i].sample.shape[0]
                responses[i] = triton_io.pb_utils.InferenceResponse([triton_io.tensor("noise_pred", out[start:start + n])])
                tracked.succeeded()
                start += n
        return responses
