"""The training stages as the loop sees them: the :class:`~.base.Objective` interface and one objective per
stage (:mod:`.dynamics`, :mod:`.tokenizer`)."""
