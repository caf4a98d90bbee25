"""idc_engine: a high-throughput TensorFlow engine for the IDC breast-histopathology patches.

Command-line entry points: python -m idc_engine.{synthetic,convert,train,evaluate,predict}.
"""

__version__ = "0.1.0"
