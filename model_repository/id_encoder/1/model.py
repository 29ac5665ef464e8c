# the Python-backend stub is an isolated interpreter: `portrait serve` passes the project's import paths
__import__("sys").path[:0] = filter(None, __import__("os").environ.get("PORTRAIT_PYTHONPATH", "").split(":"))

import torch

from portrait.errors import InvalidInput, ModelSetError
from portrait.images import decode_image
from portrait.models.identity import IdEncoderConfig, clip_pixels, load_id_encoder, read_photomaker_file
from portrait.params import MAX_ID_IMAGES, check_finite, check_id_images, check_shape
from portrait.serving import triton_io
from portrait.serving.torch_setup import torch_setup


class TritonPythonModel:
    def initialize(self, args):
        triton_io.setup(args)
        settings = torch_setup()
        self.device, self.encoder, self.path = settings.device, None, settings.photomaker_file
        if self.path is None:  # the server still serves everything but identity; requests say why
            return
        config = IdEncoderConfig.read(self.path.parent)
        encoder = load_id_encoder(read_photomaker_file(self.path)["id_encoder"], config, str(self.path))
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.encoder, self.config, self.dtype = encoder.to(self.device, dtype), config, dtype

    def execute(self, requests):
        return triton_io.respond_each(requests, self.fuse)

    @torch.no_grad()
    def fuse(self, request):
        if self.encoder is None:
            raise ModelSetError("identity needs PhotoMaker V2 weights at <models>/photomaker/photomaker-v2.bin")
        photos = triton_io.get_array(request, "id_images").reshape(-1)
        embeds = triton_io.get_array(request, "id_embeds")
        prompt_embeds, mask = triton_io.get_array(request, "prompt_embeds"), triton_io.get_array(request, "class_tokens_mask")
        n = len(photos)
        if n == 0:
            raise InvalidInput("id_images", "needs at least one identity photo")
        check_id_images(n, MAX_ID_IMAGES)
        if embeds.shape != (n, self.config.id_embeddings_dim):
            raise InvalidInput("id_embeds", f"must have shape [{n}, {self.config.id_embeddings_dim}], got {list(embeds.shape)}")
        if int(mask.sum()) != n * self.config.num_tokens:
            raise InvalidInput("class_tokens_mask", f"must mark {self.config.num_tokens} x {n} positions, got {int(mask.sum())}")
        if prompt_embeds.shape[-1] != self.config.cross_attention_dim:
            raise InvalidInput("prompt_embeds", f"must have width {self.config.cross_attention_dim}, got {prompt_embeds.shape[-1]}")
        check_shape("prompt_embeds", prompt_embeds, (1, 77, self.config.cross_attention_dim))
        check_finite("id_embeds", embeds)
        check_finite("prompt_embeds", prompt_embeds)
        images = [decode_image(bytes(p), "id_images") for p in photos]
        pixels = clip_pixels(images, self.config.image_size).to(self.device, self.dtype)
        fused = self.encoder(pixels, torch.from_numpy(prompt_embeds.copy()).to(self.device, self.dtype),
                             torch.from_numpy(mask.copy()).to(self.device),
                             torch.from_numpy(embeds.copy()).to(self.device, self.dtype))
        return triton_io.pb_utils.InferenceResponse([triton_io.tensor("id_prompt_embeds", fused.float().cpu().numpy())])
