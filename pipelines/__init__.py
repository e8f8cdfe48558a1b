"""Entry points. TensorFlow's C++ start-up chatter (CUDA probes, CPU flags) is hidden
unless the user asks for it by setting TF_CPP_MIN_LOG_LEVEL themselves."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
