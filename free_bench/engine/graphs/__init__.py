"""The graphs engine: decoders captured as CUDA graphs, with fused and static parts and skipped layers."""
