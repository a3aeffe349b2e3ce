// Example parameters: a hub on AKS with a GPU pool, Entra ID groups, scaling on.
// No secret in this file: the secure parameters are read from the environment of the shell
// that runs `az deployment group create` (unset: empty, which keeps what Key Vault holds).
using 'main.bicep'

param namePrefix = 'hubpilot'

// The hub's REST API as the app reaches it: through VNet integration (subnetId) when the hub
// is private to the cluster's VNet, e.g. behind an internal load balancer with TLS.
param hubApiUrl = 'https://hub.internal.example.org/hub/api'
param subnetId = ''

param hubToken = readEnvironmentVariable('HUBPILOT_HUB_TOKEN', '')
// [{"name": "ops", "role": "admin", "sha256": "<sha256 hex of the token>"}, {"name": "hub", "role": "hub", ...}]
param apiTokens = readEnvironmentVariable('HUBPILOT_API_TOKENS', '')

param directoryKind = 'entra'
// Sovereign clouds: the Microsoft Graph endpoint of the cloud, e.g. 'https://graph.microsoft.us'.
param graphEndpoint = ''
param graphNotifications = false
param graphClientState = readEnvironmentVariable('HUBPILOT_GRAPH_CLIENT_STATE', '')
// directoryKind = 'ldap' with a bind DN (ldapUrl, ldapBaseDn, ldapBindDn): its password
param ldapBindPassword = readEnvironmentVariable('HUBPILOT_LDAP_BIND_PASSWORD', '')

param usersGroups = [
  '00000000-0000-0000-0000-000000000001'
]
param adminGroups = [
  '00000000-0000-0000-0000-000000000002'
]
param groupNames = {
  '00000000-0000-0000-0000-000000000001': 'analysts'
  '00000000-0000-0000-0000-000000000002': 'hub-admins'
}

param scaleEnabled = true
param aksResourceGroup = 'rg-jupyterhub'
param aksClusterName = 'aks-jupyterhub'
param gpuPool = 'gpu'
param hubNamespace = 'jhub'
param gpuProfiles = [
  'gpu-t4'
]
param pricePerNodeHour = '0.90'
param stoppedVmPricePerHour = '0.03'
param aksAzureRbac = true
