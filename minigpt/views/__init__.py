"""Pictures and interactive views of what the library returns (the `views` extra: matplotlib, plotly).

`figures`: matplotlib figures (PNG files, notebooks). `interactive`: self-contained HTML pages with
no network request (a browser, or inline in Jupyter). Each is one call on a Trace, a Generation or
an analysis result; see each module's docstring for the list.
"""

from . import figures, interactive
from .interactive import View, beam_tree_view, choices_view, head_view, logit_lens_view, model_view

__all__ = ["figures", "interactive", "View", "head_view", "model_view", "logit_lens_view", "choices_view",
           "beam_tree_view"]
