"""The Hugging Face Space of the ``reid_map`` metric: ``evaluate``'s Gradio widget.

The widget shows one table row per example, one column per feature of the module (here one query: its row of
distances to the gallery, its identity, its camera), and passes only those columns to ``compute``. This metric also
needs the gallery's identities and cameras, so the table gets two more columns, ``gallery_pids`` and
``gallery_camids`` (JSON lists, the same in every row); ``compute`` reads them from the first row.
"""

from pathlib import Path

import datasets
import evaluate
from evaluate.utils import launch_gradio_widget

# The script itself, not its folder: on a Space the folder is named after the Space, not after the metric.
MODULE_FILE = Path(__file__).resolve().parent / "reid_map.py"
GALLERY_COLUMNS = ("gallery_pids", "gallery_camids")


class WithGalleryColumns:
    """The module as the widget sees it: its features plus the gallery metadata, as two list columns."""

    def __init__(self, module):
        self.module = module
        self.name = module.name
        self.info = module.info
        self.features = {**module.features, **{name: datasets.Sequence(datasets.Value("int64"))
                                               for name in GALLERY_COLUMNS}}

    def compute(self, **columns):
        gallery = {name: list(columns.pop(name)[0]) for name in GALLERY_COLUMNS}
        return self.module.compute(**{name: list(values) for name, values in columns.items()}, **gallery)


if __name__ == "__main__":  # the Space runs `python app.py`
    launch_gradio_widget(WithGalleryColumns(evaluate.load(str(MODULE_FILE))))
