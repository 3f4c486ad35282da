"""Pretraining of the embedded BLIP-2 on scenes: stage 0 (ViT), stage 1 (LM), stage 2 (vision-language)."""
