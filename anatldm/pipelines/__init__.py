"""Trained models as plain ``nn.Module`` pipelines: sample, edit, save and load without Lightning."""

from anatldm.pipelines.ldm import AnatomicalLDMPipeline, AnatomicalLDMPipelineOutput

__all__ = ["AnatomicalLDMPipeline", "AnatomicalLDMPipelineOutput"]
