"""Project commands too long for the ``dev`` script."""
