import os, sys  # noqa: E401  (the stub ignores PYTHONPATH; `portrait serve` passes the paths here)
sys.path[:0] = [p for p in os.environ.get("PORTRAIT_PYTHONPATH", "").split(os.pathsep) if p]

import asyncio  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from portrait import triton_io as io  # noqa: E402
from portrait.checkpoint import read_sdxl_info  # noqa: E402
from portrait.conditioning import sdxl_time_ids  # noqa: E402
from portrait.cancel import JOB_ID, cancel_requested, clear  # noqa: E402
from portrait.denoise import Conditioning, UNetCall, denoise_steps  # noqa: E402
from portrait.diffdiff import ImageGuide, make_image_guide, start_step  # noqa: E402
from portrait.errors import Cancelled, InvalidInput  # noqa: E402
from portrait.guidance import guided_steps  # noqa: E402
from portrait.noise import initial_noise  # noqa: E402
from portrait.params import STEPS_MAX, DenoiseParams, check_int_range  # noqa: E402
from portrait.schedules import make_scheduler  # noqa: E402
from portrait.torch_models import torch_setup  # noqa: E402

pb = io.pb_utils
EMBEDS = ("prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds")
ID_INPUTS = ("id_prompt_embeds", "id_pooled_prompt_embeds")


class TritonPythonModel:
    def initialize(self, args):
        settings = torch_setup(threads=1)  # only small tensor ops here; the UNet has the cores
        self.info = read_sdxl_info(settings.sdxl_dir)

    async def execute(self, requests):
        await asyncio.gather(*(self.run(r) for r in requests))

    def decode(self, request) -> tuple[DenoiseParams, Conditioning]:
        scalars = {k: io.get_scalar(request, k) for k in ("height", "width", "steps", "guidance_scale", "guidance_cutoff", "strength")}
        if scalars["strength"] is None:
            del scalars["strength"]
        params = DenoiseParams(seeds=tuple(int(s) for s in io.get_array(request, "seeds")), **scalars)
        embeds = [torch.from_numpy(io.get_array(request, k).copy()) for k in EMBEDS]
        for name, e in zip(EMBEDS, embeds):
            if e.shape[0] != len(params.seeds):
                raise InvalidInput(name, f"needs one row per seed ({len(params.seeds)}), got {e.shape[0]}")
        time_ids = sdxl_time_ids(params.height, params.width).expand(len(params.seeds), 6)
        identity = self.identity(request, embeds[0], embeds[1])
        return params, Conditioning(embeds[0], embeds[1], embeds[2], embeds[3], time_ids, *identity)

    @staticmethod
    def identity(request, embeds: torch.Tensor, pooled: torch.Tensor) -> tuple:
        """PhotoMaker's fused embeddings and the step after which they replace the text-only ones (all optional)."""
        arrays = {k: io.get_array(request, k) for k in ID_INPUTS}
        merge = io.get_scalar(request, "start_merge_step")
        given = [k for k, v in arrays.items() if v is not None]
        if not given:
            if merge is not None:
                raise InvalidInput("start_merge_step", "needs id_prompt_embeds and id_pooled_prompt_embeds")
            return None, None, 0
        if len(given) != len(ID_INPUTS):
            missing = next(k for k in ID_INPUTS if k not in given)
            raise InvalidInput(missing, f"is required with {given[0]}")
        for (name, array), like in zip(arrays.items(), (embeds, pooled)):
            if tuple(array.shape) != tuple(like.shape):
                raise InvalidInput(name, f"must have shape {list(like.shape)}, got {list(array.shape)}")
        merge = 0 if merge is None else merge
        check_int_range("start_merge_step", merge, 0, STEPS_MAX)
        return (*(torch.from_numpy(a.copy()) for a in arrays.values()), merge)

    def image_guide(self, request, params: DenoiseParams, noise: torch.Tensor) -> ImageGuide | None:
        """Differential-diffusion inputs, checked against the latent shape; None for text-to-image."""
        latents, change = io.get_array(request, "image_latents"), io.get_array(request, "change_map")
        if latents is None:
            for name, unused in (("change_map", change is not None), ("strength", params.strength != 1.0)):
                if unused:
                    raise InvalidInput(name, "needs image_latents")
            return None
        if tuple(latents.shape) != tuple(noise.shape):
            raise InvalidInput("image_latents", f"must have shape {list(noise.shape)}, got {list(latents.shape)}")
        if change is None:
            change = np.ones((noise.shape[0], 1, params.height, params.width), np.float32)  # plain img2img
        if change.shape != (noise.shape[0], 1, params.height, params.width):
            raise InvalidInput("change_map", f"must have shape {[noise.shape[0], 1, params.height, params.width]}, "
                                             f"got {list(change.shape)}")
        if not np.isfinite(change).all() or change.min() < 0 or change.max() > 1:
            raise InvalidInput("change_map", "values must lie in [0, 1] (high = more change)")
        return make_image_guide(torch.from_numpy(latents.copy()), torch.from_numpy(change.copy()), noise,
                                params.steps, params.strength)

    async def predict(self, call: UNetCall) -> torch.Tensor:
        inputs = {"sample": call.sample, "timestep": call.timestep.reshape(-1, 1), "encoder_hidden_states": call.encoder_hidden_states,
                  "text_embeds": call.text_embeds, "time_ids": call.time_ids}
        request = io.bls_request("unet", {k: v.numpy().astype(np.float32) for k, v in inputs.items()}, ["noise_pred"])
        return torch.from_numpy(io.read_response(await request.async_exec(), ["noise_pred"])["noise_pred"])

    async def run(self, request):
        sender = request.get_response_sender()
        job = None
        try:
            job = io.get_scalar(request, "job_id")
            if job is not None and not JOB_ID.match(job):
                job, bad = None, job
                raise InvalidInput("job_id", f"must be 32 hex digits, got {bad!r}")
            params, cond = self.decode(request)
            f = self.info.vae_scale_factor
            noise = initial_noise(list(params.seeds), (self.info.latent_channels, params.height // f, params.width // f))
            scheduler = make_scheduler(self.info.scheduler_config, params.steps)
            guide = self.image_guide(request, params, noise)
            if guide is not None:  # img2img strength: start part-way down the schedule
                scheduler.set_begin_index(start_step(params.steps, params.strength))
            run = len(scheduler.timesteps) - (scheduler.begin_index or 0)
            guided = guided_steps(run, params.guidance_scale, params.guidance_cutoff)
            steps = denoise_steps(scheduler, noise, cond, guided, params.guidance_scale, guide)
            call = next(steps)
            while True:
                if request.is_cancelled() or cancel_requested(job):
                    raise Cancelled(f"cancelled by the client at step {call.step} of {call.num_steps}")
                noise_pred = await self.predict(call)
                sender.send(pb.InferenceResponse([io.tensor("step", np.array([call.step + 1], np.int32)),
                                                  io.tensor("num_steps", np.array([call.num_steps], np.int32))]))
                try:
                    call = steps.send(noise_pred)
                except StopIteration as done:
                    latents = done.value
                    break
            sender.send(pb.InferenceResponse([io.tensor("latents", latents.numpy())]),
                        flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as error:  # this request ends with its error; the others go on
            sender.send(io.error_response(error), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            clear(job)
