"""Lab files: a deployment, its purchases and its timeline written once in TOML, checked before
anything starts, then replayed against real daemons (docs/labfile.md).

- ``schema``: the file's text to frozen values, or errors that name the line and the field (pure).
- ``plan``: the values to an ordered list of steps at lab times (pure).
- ``expect``: what an expectation asks, judged against what was observed (pure).
- ``journal``: the JSON-lines record of a run.
- ``links``, ``processes``, ``runner``: the shell that starts the daemons, relays their sockets and
  plays the steps.
"""
