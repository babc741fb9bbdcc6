#!/bin/bash
exec > _scheduler-stdout.txt
exec 2> _scheduler-stderr.txt


# ENVIRONMENT VARIABLES BEGIN ###
export OMP_NUM_THREADS='1'
# ENVIRONMENT VARIABLES END ###

'/work/main/.venv/bin/alml-train' '--name' 'mace' '--seed' '1' '--train_file' 'train.xyz' '--E0s' '{29: 3.51}' '--energy_key' 'REF_energy' '--forces_key' 'REF_forces' '--stress_key' 'REF_stress' '--work_dir' '.' '--batch_size' '5' '--correlation' '2' '--default_dtype' 'float64' '--device' 'cpu' '--max_L' '0' '--max_num_epochs' '3' '--model' 'MACE' '--num_channels' '8' '--num_interactions' '2' '--r_max' '4.0' '--valid_batch_size' '5' '--valid_fraction' '0.2'  > 'mace_run_train.out' 2>&1
