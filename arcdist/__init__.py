"""arcdist: ArcFace 2-D feature study on HF Accelerate."""
