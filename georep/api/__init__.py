"""The georep API process (`georep logstore`): the log store's queries, the control plane and the console."""
