"""The command lines: ``python -m export`` (:mod:`~export.cli.export`),
``python -m export.energy`` (:mod:`~export.cli.energy`) and
``python -m export.mcu`` (:mod:`~export.cli.mcu`), on one harness
(:mod:`~export.cli.harness`: exit codes, the one-line errors) and one data
loader (:mod:`~export.cli.data`).
"""
