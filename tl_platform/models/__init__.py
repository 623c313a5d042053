"""Pretrained encoders: where they come from, what they are, and sentence embeddings from them."""
