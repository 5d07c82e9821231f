"""A small world to prove Perfusion on: scenes, renders, a pretrained SD1.5-layout model and a judge.

Everything here serves the evidence (issue "prove it works"), not the node pack:
``scenes``/``render``/``dataset`` define the world, ``autoencoder``/``model``/
``pretrain``/``build`` make the committed world model, ``judge``/``metrics``
score generated images, ``host``/``experiments``/``evidence`` run Perfusion on it
through the pack's own nodes inside an in-process ComfyUI.
"""
