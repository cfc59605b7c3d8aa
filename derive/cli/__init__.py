"""The ``nfn-derive`` command line and its reports."""
