import matplotlib

matplotlib.use("Agg")  # unit tests only; notebooks keep the inline backend
