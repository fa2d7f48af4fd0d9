"""Hub metric Space entry point: the refusal-rate widget, built by `evaluate` from the script next to this file."""

from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget

# Loaded from this folder rather than "<namespace>/refusal_rate", so the Space works under any repository name.
module = evaluate.load(str(Path(__file__).resolve().parent))
launch_gradio_widget(module)
