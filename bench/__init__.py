"""Paddock's benchmark: sandbox create, exec round trip, output and idle memory through a real
stack on each sandbox backend (docker, supervisor), each beside the same operation done with the
Docker SDK directly in the same run, with issue 12's targets and where an exec's time goes.

Run it with ``make bench`` (or ``.venv/bin/python -m bench --help``). Absolute times on a shared
2-core machine say little; the ratio to the raw Docker baseline measured minutes apart in the
same process is the figure to watch.
"""
