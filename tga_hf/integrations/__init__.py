"""Adapters that let other evaluation tools run TGA-LLaVA models (`tga_hf.integrations.lmms_eval`)."""
