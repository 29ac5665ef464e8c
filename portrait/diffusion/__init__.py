"""The diffusion algorithms: schedules, guidance, noise, the denoising loop, differential diffusion, conditioning,
PhotoMaker's prompt rules, and the in-process reference pipeline."""
