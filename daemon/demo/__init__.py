"""``registry-janitor demo``: the story (``story``), played on a stage of real processes (``stage``, ``env``)."""
