"""``make demo``: NYC flights 2013 end to end (see :mod:`tierflow.demo.pipeline`)."""
