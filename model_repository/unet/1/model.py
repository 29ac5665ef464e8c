import os, sys  # noqa: E401  (the stub ignores PYTHONPATH; `portrait serve` passes the paths here)
sys.path[:0] = [p for p in os.environ.get("PORTRAIT_PYTHONPATH", "").split(os.pathsep) if p]

import torch  # noqa: E402

from portrait import triton_io as io  # noqa: E402
from portrait.scheduler import bucket_key, merge_calls  # noqa: E402
from portrait.denoise import UNetCall  # noqa: E402
from portrait.torch_models import torch_setup  # noqa: E402
from portrait.unet_runner import check_unet_inputs, load_predictor, warm_up  # noqa: E402

INPUTS = ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids")


class TritonPythonModel:
    """One noise prediction per request, for perf_analyzer and direct calls. Served only with PORTRAIT_SERVE_UNET=1:
    `denoise` holds its own UNet, and this model loads a second copy of the weights."""

    def initialize(self, args):
        io.setup(args)
        self.predict = load_predictor(torch_setup(heavy=True))
        warm_up(self.predict, self.predict.dims)

    def decode(self, request) -> UNetCall:
        arrays = [io.get_array(request, name) for name in INPUTS]
        check_unet_inputs(self.predict.dims, *arrays)
        sample, timestep, hidden, text_embeds, time_ids = (torch.from_numpy(a.copy()) for a in arrays)
        return UNetCall(sample, timestep.reshape(-1), hidden, text_embeds, time_ids, 0, 1)

    def execute(self, requests):
        tracked = io.Tracked(len(requests))
        responses, calls = [None] * len(requests), {}
        for i, request in enumerate(requests):
            try:
                io.refuse_if_draining(request)
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
                responses[i] = io.pb_utils.InferenceResponse([io.tensor("noise_pred", out[start:start + n])])
                tracked.succeeded()
                start += n
        return responses
