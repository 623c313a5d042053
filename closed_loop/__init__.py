"""The main command's story: the whole closed loop on the embedded default, driven through this code location.

`tlp run` starts this package (``python -m closed_loop``) with DAGSTER_HOME and TLP_HOME set. It materialises
the jobs of ``definitions`` in the local instance, one run per step, so every run, asset, check and model
version is in `tlp ui` and `tlp mlflow-ui` afterwards: the plan, the model stages and the deployment; then
simulated days of traffic through the real serving API over HTTP, each followed by its monitor partition and a
tick of the retrain trigger (the daemon's sensor code, at the simulated time); the retrain it requests, the
candidate's shadow and A/B days with daily decisions; and last the cost report and the ROI curve. Progress goes
to the terminal, Dagster's event stream to a log file; the state after each step goes to TLP_HOME/story, so an
interrupted run resumes where it stopped.
"""
