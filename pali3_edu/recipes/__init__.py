"""Training stages as recipes: one :class:`Recipe` type, one cache, one ``load_or_train``.

=============  ==========================================  ===========
stage          what it trains                              lesson
=============  ==========================================  ===========
``siglip``     the image tower, contrastively (SigLIP)     04
``ul2``        the encoder-decoder, mixture of denoisers   07
=============  ==========================================  ===========

>>> from pali3_edu.recipes import get_recipe
>>> recipe = get_recipe("ul2", "micro", steps=10)
>>> recipe.train.steps, recipe.data.chunk_len
(10, 24)
>>> recipe.fingerprint() == get_recipe("ul2", "micro", steps=10).fingerprint()
True
>>> recipe.fingerprint() == get_recipe("ul2", "micro", steps=11).fingerprint()
False
"""

from pali3_edu.recipes.base import (  # noqa: F401
    Recipe,
    Stage,
    TrainedRun,
    checkpoint_dir,
    describe_changes,
    get_recipe,
    get_stage,
    list_recipes,
    load_or_train,
    run_dir,
)
