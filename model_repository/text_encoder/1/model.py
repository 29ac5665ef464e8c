# the Python-backend stub is an isolated interpreter: `portrait serve` passes the project's import paths
__import__("sys").path[:0] = filter(None, __import__("os").environ.get("PORTRAIT_PYTHONPATH", "").split(":"))

import numpy as np

from portrait.diffusion.trigger import TRIGGER_WORD
from portrait.errors import InvalidInput
from portrait.models.identity import IdEncoderConfig
from portrait.models.sdxl import TextEncoders
from portrait.params import MAX_ID_IMAGES, check_int_range, check_prompt
from portrait.serving import triton_io
from portrait.serving.torch_setup import torch_setup


class TritonPythonModel:
    def initialize(self, args):
        triton_io.setup(args)
        settings = torch_setup()
        self.text = TextEncoders(settings.sdxl_dir, settings.device)
        self.text(["warm-up"])  # a real forward: a broken checkpoint fails the load, not the first request
        self.id_tokens = IdEncoderConfig.read(settings.models_dir / "photomaker").num_tokens  # per identity photo

    def execute(self, requests):
        # one encoder batch for the plain prompts the dynamic batcher gathered; identity prompts one by one
        tracked = triton_io.Tracked(len(requests))
        responses: list = [None] * len(requests)
        plain, prompts = [], []
        for i, request in enumerate(requests):
            try:
                triton_io.refuse_if_draining(request)
                group = self.prompts(request)
                if triton_io.get_array(request, "num_id_images") is None:
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
                responses[i] = triton_io.pb_utils.InferenceResponse([
                    triton_io.tensor("prompt_embeds", enc.embeds[rows].numpy()),
                    triton_io.tensor("pooled_prompt_embeds", enc.pooled[rows].numpy()),
                    triton_io.tensor("token_count", enc.token_counts[rows].numpy().astype(np.int32).reshape(n, 1)),
                    triton_io.tensor("class_tokens_mask", np.zeros((n, enc.embeds.shape[1]), bool)),
                ])
                tracked.succeeded()
        return responses

    @staticmethod
    def prompts(request) -> list[str]:
        """The request's prompts, each checked as stage1 checks its prompt (an empty one is the empty negative)."""
        texts = []
        for raw in triton_io.get_array(request, "prompt").reshape(-1):
            try:
                text = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput("prompt", "must be UTF-8 text") from None
            check_prompt("prompt", text, required=False)
            texts.append(text)
        return texts

    def with_trigger(self, request, prompts: list[str]):
        counts = triton_io.get_array(request, "num_id_images").reshape(-1)
        if len(prompts) != 1:
            raise InvalidInput("num_id_images", f"goes with one prompt per request, got {len(prompts)}")
        count = int(counts[0])
        check_int_range("num_id_images", count, 1, MAX_ID_IMAGES)
        enc = self.text.with_trigger(prompts[0], count, self.id_tokens, TRIGGER_WORD)
        return triton_io.pb_utils.InferenceResponse([
            triton_io.tensor("prompt_embeds", enc.embeds.numpy()), triton_io.tensor("pooled_prompt_embeds", enc.pooled.numpy()),
            triton_io.tensor("token_count", np.array([[enc.token_count]], np.int32)),
            triton_io.tensor("class_tokens_mask", enc.class_tokens_mask.numpy()),
        ])
