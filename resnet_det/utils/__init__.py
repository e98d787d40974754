"""The bottom layer of ``resnet_det``: file I/O, input limits, safe paths, rank helpers, drawing.

Every other layer (config, data, modeling, evaluation, engine, tools) may import these modules;
they import nothing of ``resnet_det`` outside ``utils`` but ``resnet_det.errors``
(tests/test_import_layers.py).
"""
