"""The networks and their weights: SDXL loading, checkpoint reading, PhotoMaker's ID encoder, face detection and masks,
the UNet predictors (torch, TensorRT), ONNX/TensorRT export, the tiny default set."""
