"""One module per method, built from :mod:`jaxmri.nn` and :mod:`jaxmri.physics`.

* :mod:`~jaxmri.models.recon`: DC-CNN cascade and U-Net reconstruction (shared baselines).
* :mod:`~jaxmri.models.invsharp`: InvSharpNet and its refinement baselines (paper 000).
* :mod:`~jaxmri.models.dsgan`: downsampling GAN, kernel extraction and DSN (paper 001).
* :mod:`~jaxmri.models.ifrnet`: IFR-CS, ADMM-Net and IFR-Net (paper 002).
* :mod:`~jaxmri.models.refine`: RecNet, gated refinement and the joint baseline (paper 003);
  :mod:`~jaxmri.models.segmenter` for the semantic interpretability score.
* :mod:`~jaxmri.models.joint_recsr`: PGD deep-equilibrium reconstruction + RRDB-SFT
  super-resolution (paper 004).

Import each from its submodule; importing this package loads nothing heavy.
"""
