"""One module per method, built from :mod:`jaxmri.nn` and :mod:`jaxmri.physics`.

* :mod:`~jaxmri.models.recon`: DC-CNN cascade and U-Net reconstruction (shared baselines).
* :mod:`~jaxmri.models.invsharp`: InvSharpNet and its refinement baselines (paper 000).

Import each from its submodule; importing this package loads nothing heavy.
"""
