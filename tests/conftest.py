import matplotlib
import torch

matplotlib.use("Agg")  # unit tests only; notebooks keep the inline backend
torch.set_num_threads(1)  # unit tests use tiny tensors: thread start-up costs more than it saves
