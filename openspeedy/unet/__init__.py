"""The UNet's runtime: what makes the served PyTorch UNet faster than diffusers' own, one module a technique."""
