"""What feeds the ledger: inbox events (``inbox``), CI jobs' records and untag requests (``ci_gate``),
and catching up from the GitLab API on what webhooks missed (``catchup``)."""
