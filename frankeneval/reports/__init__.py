"""Tables and plots of every analysis: characterization plots, localization plots, the transfer leaderboard."""
