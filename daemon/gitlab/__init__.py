"""Everything the janitor asks GitLab, and the only package that imports python-gitlab.

    errors   the one mapping from python-gitlab's and requests' exceptions to the janitor's errors
    client   CI job-token verification and branch lookups, cached (``GitLab``)
    api      merge requests, pipelines, branches, group projects, webhooks, project access (``GitLabAPI``)
    tags     the ``gitlab-api`` untag method's tag delete (``GitLabTagDeleter``)
    hooks    which webhook each project needs, installed and verified through ``api``
    stats    every API request counted and timed per endpoint and status, added to storage
"""
