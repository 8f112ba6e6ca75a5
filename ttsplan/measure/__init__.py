"""Measuring: what `ttsplan profile` records, once per device and once per model and task.

  step_cost   a device profile: decode-step, prefill and speculative-round costs on this device
  samples     raw accuracy samples: N_max branches per calibration problem, tokens and scores
  acceptance  the draft's acceptance rate per position, from real speculative generation
  profiles    the two profile files (device, task): schema, validation, YAML round trip
"""
