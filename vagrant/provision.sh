#!/usr/bin/env bash
# Provision one lab VM: install govern with its lab extra from the synced checkout, then give the machine its lab
# role.
set -euo pipefail
role=${1:?usage: provision.sh mx|router|trusted|legit|bots}
cd /govern
bash .ci/setup install
govern lab provision "$role" --this-host-is-a-lab-vm
