import os, sys  # noqa: E401  (the stub ignores PYTHONPATH; `portrait serve` passes the paths here)
sys.path[:0] = [p for p in os.environ.get("PORTRAIT_PYTHONPATH", "").split(os.pathsep) if p]

import numpy as np  # noqa: E402

from portrait import triton_io as io  # noqa: E402
from portrait.errors import InvalidInput  # noqa: E402
from portrait.identity import IdEncoderConfig  # noqa: E402
from portrait.params import MAX_ID_IMAGES, TRIGGER_WORD, check_int_range, check_prompt  # noqa: E402
from portrait.sdxl import TextEncoders  # noqa: E402
from portrait.torch_models import torch_setup  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        io.setup(args)
        settings = torch_setup()
        self.text = TextEncoders(settings.sdxl_dir, settings.device)
        self.text(["warm-up"])  # a real forward: a broken checkpoint fails the load, not the first request
        self.id_tokens = IdEncoderConfig.read(settings.models_dir / "photomaker").num_tokens  # per identity photo

    def execute(self, requests):
        # one encoder batch for the plain prompts the dynamic batcher gathered; identity prompts one by one
        tracked = io.Tracked(len(requests))
        responses: list = [None] * len(requests)
        plain, prompts = [], []
        for i, request in enumerate(requests):
            try:
                io.refuse_if_draining(request)
                group = self.prompts(request)
                if io.get_array(request, "num_id_images") is None:
                    plain.append(i)
                    prompts.append(group)
                else:
                    responses[i] = self.with_trigger(request, group)
                    tracked.succeeded()
            except Exception as error:
                responses[i] = tracked.failed(error)
        if prompts:
            try:
                enc = self.text([p for group in prompts for p in group])
            except Exception as error:
                for i in plain:
                    responses[i] = tracked.failed(error)
                return responses
            start = 0
            for i, group in zip(plain, prompts):
                n, rows = len(group), slice(start, start + len(group))
                start += n
                responses[i] = io.pb_utils.InferenceResponse([
                    io.tensor("prompt_embeds", enc.embeds[rows].numpy()),
                    io.tensor("pooled_prompt_embeds", enc.pooled[rows].numpy()),
                    io.tensor("token_count", enc.token_counts[rows].numpy().astype(np.int32).reshape(n, 1)),
                    io.tensor("class_tokens_mask", np.zeros((n, enc.embeds.shape[1]), bool)),
                ])
                tracked.succeeded()
        return responses

    @staticmethod
    def prompts(request) -> list[str]:
        """The request's prompts, each checked as stage1 checks its prompt (an empty one is the empty negative)."""
        texts = []
        for raw in io.get_array(request, "prompt").reshape(-1):
            try:
                text = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput("prompt", "must be UTF-8 text") from None
            check_prompt("prompt", text, required=False)
            texts.append(text)
        return texts

    def with_trigger(self, request, prompts: list[str]):
        counts = io.get_array(request, "num_id_images").reshape(-1)
        if len(prompts) != 1:
            raise InvalidInput("num_id_images", f"goes with one prompt per request, got {len(prompts)}")
        count = int(counts[0])
        check_int_range("num_id_images", count, 1, MAX_ID_IMAGES)
        enc = self.text.with_trigger(prompts[0], count, self.id_tokens, TRIGGER_WORD)
        return io.pb_utils.InferenceResponse([
            io.tensor("prompt_embeds", enc.embeds.numpy()), io.tensor("pooled_prompt_embeds", enc.pooled.numpy()),
            io.tensor("token_count", np.array([[enc.token_count]], np.int32)),
            io.tensor("class_tokens_mask", enc.class_tokens_mask.numpy()),
        ])
