"""The pure core: the product's nouns (``model``), names and scope (``names``, ``policy``), tag patterns,
webhook parsing (``events``) and the planner's decisions. Values in, values out; no I/O of any kind."""
