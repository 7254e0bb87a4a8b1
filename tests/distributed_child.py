"""Runs ``floranet.cli`` in a fresh process after splitting the CPU into N logical devices.

Usage: python distributed_child.py N_CPUS floranet-args...  (logical devices must be set before TF starts)
"""

import sys

import tensorflow as tf

n = int(sys.argv[1])
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)

from floranet.cli import main  # noqa: E402

sys.exit(main(sys.argv[2:]))
