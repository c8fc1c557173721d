"""vhd-gc benchmarks (issue "Scale"): ``python -m bench [azurite|million|concurrency|all]``.

Everything here drives vhd-gc from the outside (``build_collector``/``Collector.run_pass``) and
measures it against a floor made of the raw Azure SDK calls alone. See ``docs/performance.md``.
"""
