"""The decision core: every judgement govern makes, pure (no I/O, no clock, no globals).

- policy: the Policy and ModePolicy it judges by;
- decide: one tick's plan from a snapshot, the state and the policy, and the checks behind manual actions;
- modes: pressure and the mode it calls for;
- aggregate: turning many blocked hosts of one network into a block of the network.
"""
