"""``pageserver bench`` (SPEC section 9): the harness (:mod:`.harness`) and its measurements
(:mod:`._measure`)."""
