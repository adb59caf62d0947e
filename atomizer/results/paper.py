"""The paper's published numbers (Riffaud de Turckheim et al., 2025; macro mAP %, BigEarthNet), drawn as
reference marks beside our results (notebooks, dashboard). Never used to tune or select anything.

* :data:`PAPER_TABLE1`: the modality-disjoint experiment, per model, test modalities T1..T6.
* :data:`PAPER_RESOLUTION_SWEEP`: Atomizer against the modality GSD (m).
* :data:`PAPER_SIZE_SWEEP`: Atomizer against the image size (px).
"""

from __future__ import annotations

#: Label of the paper's marks in plots.
PAPER_LABEL = "paper (BigEarthNet)"
#: The metric the paper reports.
PAPER_METRIC = "macro_map"

PAPER_TABLE1: dict[str, list[float]] = {
    "perceiver": [16.47, 19.89, 14.73, 22.17, 14.73, 22.28],
    "vit": [17.29, 19.77, 32.85, 18.12, 15.79, 26.98],
    "resnet": [17.91, 19.37, 38.33, 22.36, 14.52, 22.86],
    "scalemae": [20.89, 20.32, 34.92, 25.70, 19.61, 26.90],
    "atomizer": [42.50, 35.63, 43.34, 37.53, 32.28, 47.74],
}
PAPER_RESOLUTION_SWEEP: dict[float, float] = {20.0: 48.66, 26.7: 48.56, 40.0: 47.88, 80.0: 44.09}
PAPER_SIZE_SWEEP: dict[int, float] = {30: 37.98, 60: 45.89, 90: 47.96, 120: 48.66}
