// hubpilot on Azure Functions (Flex Consumption, Linux, Python), deployed into one resource group
// next to an existing AKS cluster. See infra/bicep/README.md for what this deploys, how to deploy
// it and the steps Bicep cannot do (Microsoft Graph permissions, Kubernetes authorization).
//
// No connection string and no storage key anywhere: the app, its host and its deployment all
// use one user-assigned managed identity. Every cloud endpoint comes from environment() or a
// parameter, so the template deploys unchanged in sovereign clouds.

targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------
// Where and what
// ---------------------------------------------------------------------------------------------

@description('Azure region of every resource (one where Flex Consumption is offered).')
param location string = resourceGroup().location

@description('Short lowercase prefix of the resource names (3-11 letters or digits).')
@minLength(3)
@maxLength(11)
param namePrefix string = 'hubpilot'

@description('Name of the function app; its default host name is <appName>.<App Service domain of the cloud>.')
@minLength(2)
@maxLength(60)
param appName string = '${namePrefix}-${uniqueString(resourceGroup().id)}'

@description('Tags applied to every resource.')
param tags object = {}

@description('Python version of the Functions runtime (functionAppConfig.runtime).')
@allowed([
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

@description('Memory of one Flex Consumption instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Most Flex Consumption instances the app scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Redundancy of the Storage account (Standard_LRS in a region without availability zones).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSku string = 'Standard_ZRS'

@description('Spread the Flex Consumption instances over availability zones (the region must support it).')
param zoneRedundant bool = false

@description('Resource id of a subnet (delegated to Microsoft.App/environments) for VNet integration, so the app reaches a hub API that is private to the cluster\'s VNet. Empty: no VNet integration.')
param subnetId string = ''

// ---------------------------------------------------------------------------------------------
// The hub and the admin API
// ---------------------------------------------------------------------------------------------

@description('The hub\'s REST API base URL, ending in /hub/api (hub.api_url), reachable from the app.')
param hubApiUrl string

@description('API token of the hubpilot service in JupyterHub (hub.token); stored as Key Vault secret hub-token. Empty: keep the secret the vault holds (a redeploy need not repeat it).')
@secure()
param hubToken string = ''

@description('api.tokens as JSON: [{"name": "...", "role": "admin|reader|hub", "sha256": "<64 hex>"}]. Empty: no bearer tokens (only App Service authentication, if on).')
@secure()
param apiTokens string = ''

@description('api.app_service_auth: trust App Service authentication\'s principal header. Turn on after configuring App Service authentication on the app; hubpilot refuses the header while the platform does not report it on (WEBSITE_AUTH_ENABLED).')
param appServiceAuth bool = false

@description('NCRONTAB of the scheduled sync (sync.schedule); the timer trigger reads this app setting.')
param syncSchedule string = '0 */15 * * * *'

@description('NCRONTAB of the cull round (cull.schedule).')
param cullSchedule string = '0 */10 * * * *'

@description('NCRONTAB of the scale timer (scale.schedule).')
param scaleSchedule string = '0 * * * * *'

@description('More app settings, name → string value (e.g. HUBPILOT_CULL__INACTIVITY_TIMEOUT); applied last.')
param extraAppSettings object = {}

// ---------------------------------------------------------------------------------------------
// The directory and the sync
// ---------------------------------------------------------------------------------------------

@description('Where group membership comes from (directory.kind).')
@allowed([
  'entra'
  'ldap'
])
param directoryKind string = 'entra'

@description('Microsoft Graph endpoint of this cloud, without path (e.g. the US Government L4 Graph host). environment() names only the retired Azure AD Graph, so it cannot give this. Empty: hubpilot\'s default, the global Microsoft Graph service; set it in every sovereign cloud.')
param graphEndpoint string = ''

@description('Subscribe to Microsoft Graph change notifications for the synced groups (Entra only). Needs the Graph application permission Group.Read.All as well.')
param graphNotifications bool = false

@description('The clientState secret Graph echoes in every notification (at most 128 characters); stored as Key Vault secret graph-client-state. Empty: keep the secret the vault holds.')
@secure()
param graphClientState string = ''

@description('ldap:// or ldaps:// URL of the LDAP server; required with directoryKind = ldap (hubpilot refuses to start without it, naming HUBPILOT_DIRECTORY__LDAP__URL).')
param ldapUrl string = ''

@description('Upgrade an ldap:// ldapUrl with StartTLS (directory.ldap.start_tls). A bind password over ldap:// without it is refused at start: use this or an ldaps:// ldapUrl.')
param ldapStartTls bool = false

@description('DN of the search base for people and groups, e.g. dc=example,dc=org; required with directoryKind = ldap (hubpilot refuses to start without it, naming HUBPILOT_DIRECTORY__LDAP__BASE_DN).')
param ldapBaseDn string = ''

@description('DN to bind as (directoryKind = ldap); empty: anonymous bind.')
param ldapBindDn string = ''

@description('Password of ldapBindDn; stored as Key Vault secret ldap-bind-password. Empty: keep the secret the vault holds.')
@secure()
param ldapBindPassword string = ''

@description('Directory groups whose members become hub users (sync.users_groups; Entra: group object ids).')
param usersGroups array = []

@description('Directory groups whose members get admin rights (sync.admin_groups).')
param adminGroups array = []

@description('Hub group name (without prefix) per directory group (sync.group_names), e.g. {"<object id>": "analysts"}.')
param groupNames object = {}

// ---------------------------------------------------------------------------------------------
// Scaling the AKS GPU pool
// ---------------------------------------------------------------------------------------------

@description('Run the scale capability (scale.enabled) and grant the identity its rights on the AKS cluster.')
param scaleEnabled bool = false

@description('Subscription of the AKS cluster.')
param aksSubscriptionId string = subscription().subscriptionId

@description('Resource group of the AKS cluster (may differ from this one).')
param aksResourceGroup string = ''

@description('Name of the AKS managed cluster.')
param aksClusterName string = ''

@description('Grant the identity read access to the status of AKS operations at the AKS subscription (the deployer then needs rights there). Off: pool changes are reported pending and the next run re-observes.')
param aksOperationStatusRead bool = true

@description('Name of the GPU agent pool (scale.pool).')
param gpuPool string = 'gpu'

@description('Namespace of the hub and its user pods (scale.namespace).')
param hubNamespace string = 'jhub'

@description('Hub profiles (slugs, or profile:option=choice forms) whose pending spawns count as GPU demand (scale.gpu_profiles).')
param gpuProfiles array = []

@description('Price of one GPU node-hour for the cost report (scale.price_per_node_hour), a decimal number as text.')
param pricePerNodeHour string = '0'

@description('What a stopped VM of a Deallocate GPU pool costs an hour (its managed disks) for the cost report (scale.stopped_vm_price_per_hour), a decimal number as text.')
param stoppedVmPricePerHour string = '0'

@description('Grant the Kubernetes rights (list/cordon nodes, list pods) through Azure RBAC for Kubernetes authorization. false: bind them with a Kubernetes ClusterRoleBinding instead (README).')
param aksAzureRbac bool = true

// ---------------------------------------------------------------------------------------------
// Names and constants
// ---------------------------------------------------------------------------------------------

var suffix = uniqueString(resourceGroup().id, namePrefix)
var identityName = 'id-${namePrefix}'
var storageAccountName = take(toLower('st${namePrefix}${suffix}'), 24)
var keyVaultName = take('kv-${namePrefix}-${suffix}', 24)
var workspaceName = 'log-${namePrefix}'
var appInsightsName = 'appi-${namePrefix}'
var planName = 'plan-${namePrefix}'

// What the app code expects (tests/test_infra.py checks these against the code).
var stateContainerName = 'hubpilot-state' // state.azure_container's default
var runQueueName = 'hubpilot-runs' // hubpilot.api.runs.QUEUE_NAME
var graphQueueName = 'hubpilot-graph' // functions/graph.py HINT_QUEUE
var deploymentContainerName = 'hubpilot-package' // Flex Consumption's app package

// Cloud endpoints, without the trailing '/' environment() gives them.
var armEndpoint = endsWith(environment().resourceManager, '/') ? substring(environment().resourceManager, 0, length(environment().resourceManager) - 1) : environment().resourceManager
var loginEndpoint = endsWith(environment().authentication.loginEndpoint, '/') ? substring(environment().authentication.loginEndpoint, 0, length(environment().authentication.loginEndpoint) - 1) : environment().authentication.loginEndpoint
var graphRoot = endsWith(graphEndpoint, '/') ? substring(graphEndpoint, 0, length(graphEndpoint) - 1) : graphEndpoint

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' = {
  name: identityName
  location: location
  tags: tags
}

module storage 'modules/storage.bicep' = {
  name: 'hubpilot-storage'
  params: {
    name: storageAccountName
    location: location
    tags: tags
    principalId: identity.properties.principalId
    stateContainerName: stateContainerName
    deploymentContainerName: deploymentContainerName
    skuName: storageSku
    queueNames: [
      runQueueName
      graphQueueName
    ]
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'hubpilot-monitoring'
  params: {
    workspaceName: workspaceName
    appInsightsName: appInsightsName
    location: location
    tags: tags
    principalId: identity.properties.principalId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'hubpilot-keyvault'
  params: {
    name: keyVaultName
    location: location
    tags: tags
    principalId: identity.properties.principalId
    workspaceId: monitoring.outputs.workspaceId
    hubToken: hubToken
    graphClientState: graphClientState
    ldapBindPassword: ldapBindPassword
  }
}

// The cluster's resource group: this one unless aksResourceGroup names another.
var aksResourceGroupName = empty(aksResourceGroup) ? resourceGroup().name : aksResourceGroup

module aksOperationStatus 'modules/aks-operation-status.bicep' = if (scaleEnabled && aksOperationStatusRead) {
  name: 'hubpilot-aks-operation-status'
  scope: subscription(aksSubscriptionId)
  params: {
    principalId: identity.properties.principalId
  }
}

module aksAccess 'modules/aks-access.bicep' = if (scaleEnabled) {
  name: 'hubpilot-aks-access'
  scope: resourceGroup(aksSubscriptionId, aksResourceGroupName)
  params: {
    clusterName: aksClusterName
    principalId: identity.properties.principalId
    azureRbac: aksAzureRbac
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-11-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

resource app 'Microsoft.Web/sites@2024-11-01' = {
  name: appName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identity.id
    virtualNetworkSubnetId: empty(subnetId) ? null : subnetId
    // No ftpsState: Flex Consumption has no FTP(S) and deprecates the property (some regions
    // reject it); basic-auth publishing is off below.
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: storage.outputs.deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// No basic-auth publishing: deployments authenticate with Entra ID.
resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-11-01' = {
  parent: app
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-11-01' = {
  parent: app
  name: 'scm'
  properties: {
    allow: false
  }
}

// ---------------------------------------------------------------------------------------------
// App settings. Flex Consumption takes the runtime from functionAppConfig: no
// FUNCTIONS_WORKER_RUNTIME or FUNCTIONS_EXTENSION_VERSION here.
// ---------------------------------------------------------------------------------------------

var clientId = identity.properties.clientId
var keyVaultReference = '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.uri}secrets/'

// The Functions host's storage, by identity. The service URIs come from the account itself
// (right in every cloud; the host would otherwise build global-cloud URIs from the name).
var hostSettings = {
  AzureWebJobsStorage__accountName: storage.outputs.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: clientId
  AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
  AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
  AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${clientId};Authorization=AAD'
  // DefaultAzureCredential (state store, ARM) picks the user-assigned identity by this.
  AZURE_CLIENT_ID: clientId
}

var coreSettings = {
  HUBPILOT_HUB__API_URL: hubApiUrl
  HUBPILOT_HUB__TOKEN: '${keyVaultReference}hub-token)'
  HUBPILOT_STATE__KIND: 'azure'
  HUBPILOT_STATE__AZURE_ACCOUNT_NAME: storage.outputs.name
  HUBPILOT_STATE__AZURE_ENDPOINT_SUFFIX: environment().suffixes.storage
  HUBPILOT_STATE__AZURE_CONTAINER: stateContainerName
  HUBPILOT_API__RUN_MODE: 'queue'
  HUBPILOT_API__APP_SERVICE_AUTH: appServiceAuth ? 'true' : 'false'
  // flat names: the timers' binding expressions cannot read a name with '__' (functions/timers.py)
  HUBPILOT_SYNC_SCHEDULE: syncSchedule
  HUBPILOT_CULL_SCHEDULE: cullSchedule
  HUBPILOT_SCALE_SCHEDULE: scaleSchedule
  HUBPILOT_SYNC__USERS_GROUPS: string(usersGroups)
  HUBPILOT_SYNC__ADMIN_GROUPS: string(adminGroups)
  HUBPILOT_SYNC__GROUP_NAMES: string(groupNames)
  HUBPILOT_SCALE__ENABLED: scaleEnabled ? 'true' : 'false'
}

var apiTokenSettings = empty(apiTokens) ? {} : {
  HUBPILOT_API__TOKENS: apiTokens
}

var entraSettings = {
  HUBPILOT_DIRECTORY__KIND: 'entra'
  HUBPILOT_DIRECTORY__ENTRA__CREDENTIAL: 'managed_identity'
  HUBPILOT_DIRECTORY__ENTRA__CLIENT_ID: clientId
  HUBPILOT_DIRECTORY__ENTRA__TENANT_ID: tenant().tenantId
  HUBPILOT_DIRECTORY__ENTRA__AUTHORITY_HOST: loginEndpoint
}

var graphEndpointSettings = empty(graphEndpoint) ? {} : {
  HUBPILOT_DIRECTORY__ENTRA__GRAPH_BASE_URL: '${graphRoot}/v1.0'
}

var graphNotificationSettings = graphNotifications ? {
  HUBPILOT_DIRECTORY__ENTRA__NOTIFICATIONS: 'true'
  HUBPILOT_DIRECTORY__ENTRA__NOTIFICATION_URL: 'https://${app.properties.defaultHostName}/api/v1/graph/notifications'
  HUBPILOT_DIRECTORY__ENTRA__CLIENT_STATE: '${keyVaultReference}graph-client-state)'
  HUBPILOT_DIRECTORY__ENTRA__QUEUE: 'azure'
  HUBPILOT_DIRECTORY__ENTRA__QUEUE_ACCOUNT_URL: 'https://${storage.outputs.name}.queue.${environment().suffixes.storage}'
} : {}

var ldapSettings = {
  HUBPILOT_DIRECTORY__KIND: 'ldap'
  HUBPILOT_DIRECTORY__LDAP__URL: ldapUrl
  HUBPILOT_DIRECTORY__LDAP__BASE_DN: ldapBaseDn
}

var ldapBindSettings = empty(ldapBindDn) ? {} : {
  HUBPILOT_DIRECTORY__LDAP__BIND_DN: ldapBindDn
  HUBPILOT_DIRECTORY__LDAP__BIND_PASSWORD: '${keyVaultReference}ldap-bind-password)'
}

var ldapTlsSettings = ldapStartTls ? {
  HUBPILOT_DIRECTORY__LDAP__START_TLS: 'true'
} : {}

var directorySettings = (directoryKind == 'entra') ? union(entraSettings, graphEndpointSettings, graphNotificationSettings) : union(ldapSettings, ldapBindSettings, ldapTlsSettings)

var scaleSettings = scaleEnabled ? {
  HUBPILOT_SCALE__SUBSCRIPTION_ID: aksSubscriptionId
  HUBPILOT_SCALE__RESOURCE_GROUP: aksResourceGroupName
  HUBPILOT_SCALE__CLUSTER: aksClusterName
  HUBPILOT_SCALE__POOL: gpuPool
  HUBPILOT_SCALE__NAMESPACE: hubNamespace
  HUBPILOT_SCALE__GPU_PROFILES: string(gpuProfiles)
  HUBPILOT_SCALE__ARM_ENDPOINT: armEndpoint
  HUBPILOT_SCALE__ARM_AUDIENCE: '${armEndpoint}/.default'
  HUBPILOT_SCALE__AUTHORITY: loginEndpoint
  HUBPILOT_SCALE__KUBE_AUTH: 'entra'
  HUBPILOT_SCALE__PRICE_PER_NODE_HOUR: pricePerNodeHour
  HUBPILOT_SCALE__STOPPED_VM_PRICE_PER_HOUR: stoppedVmPricePerHour
} : {
  // without scaling the timer would still wake the app every minute (and bill an execution) only
  // to find scale.enabled off: the host's documented per-function switch keeps it from firing
  // (POST /api/v1/scale has no cluster either: its settings and roles come with scaleEnabled)
  'AzureWebJobs.scale_timer.Disabled': 'true'
}

var graphNotificationsOn = directoryKind == 'entra' && graphNotifications

// the subscription manager's hourly timer has nothing to do without Graph notifications: the
// host's per-function switch keeps it from waking the app
var graphTimerSettings = graphNotificationsOn ? {} : {
  'AzureWebJobs.graph_subscriptions.Disabled': 'true'
}

resource appSettings 'Microsoft.Web/sites/config@2024-11-01' = {
  parent: app
  name: 'appsettings'
  properties: union(hostSettings, coreSettings, apiTokenSettings, directorySettings, scaleSettings, graphTimerSettings, extraAppSettings)
  dependsOn: [
    aksAccess
  ]
}

// ---------------------------------------------------------------------------------------------
// Outputs (no secret among them)
// ---------------------------------------------------------------------------------------------

@description('Name of the function app (func azure functionapp publish <name>).')
output functionAppName string = app.name

@description('Default host name of the function app.')
output defaultHostName string = app.properties.defaultHostName

@description('Object id of the managed identity: grant it the Graph permissions and, without Azure RBAC for Kubernetes, the Kubernetes binding.')
output identityPrincipalId string = identity.properties.principalId

@description('Client id of the managed identity.')
output identityClientId string = clientId

@description('URL the hub posts GPU demand to (hubpilot_hub.scale_demand.configure_scale_demand url = this without /scale/demand).')
output demandUrl string = 'https://${app.properties.defaultHostName}/api/v1/scale/demand'

@description('Name of the Key Vault holding hub-token (and graph-client-state, ldap-bind-password).')
output keyVaultName string = keyVault.outputs.name

@description('Name of the Storage account.')
output storageAccountName string = storage.outputs.name
