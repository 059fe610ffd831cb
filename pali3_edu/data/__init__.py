"""Data for the course: ShapesWorld (``shapesworld``), PaLI prompt formats and the ``<loc>`` box
codec (``tasks``), image batching (``collate``) and real hub data sets in the same schema (``hub``).

The token facts these formats rely on (location bins, task prefixes) live in
:mod:`pali3_edu.tokens`."""

from pali3_edu.data.collate import image_to_tensor, images_to_batch  # noqa: F401
from pali3_edu.data.shapesworld import (  # noqa: F401
    COLORS,
    GENERATOR_VERSION,
    HELDOUT_COMBOS,
    SHAPES,
    SIZES,
    SPLITS,
    Scene,
    ShapesWorldConfig,
    generate_scene,
    load_shapesworld,
    render,
    render_masks,
    scene_record,
    text_corpus,
)
from pali3_edu.data.tasks import (  # noqa: F401
    NUM_LOC_BINS,
    TASK_PREFIXES,
    TASKS,
    DetectionResult,
    decode_box,
    encode_box,
    format_detection,
    make_example,
    parse_detection,
)
