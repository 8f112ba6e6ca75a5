"""Planning: from a device profile and a task profile to the best plan within a latency budget.

  cost_model   step costs fitted to a roofline shape (scipy), prefill, per-batch tables
  task_arrays  the task profile as arrays: lengths, answers and weights under any cap and rule
  accuracy     a plan's accuracy by subsampling the profiled branches, with bootstrap intervals
  early_stop   when a vote is decided, replayed on the samples
  latency      a plan's latency by replaying its decode loop on the fitted costs
  search       every plan of the grid scored; the best within the budget; the seed paper's baselines
  plan         the Plan that optimize writes and run executes
  optimize     the whole step, profiles in, Plan out
"""
